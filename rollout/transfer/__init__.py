"""Weight transfer from the learners to the engines: one bucket format, several carriers.

A policy update travels as buckets of at most `rollout.weight_bucket_mb` (one tensor larger
than that is a bucket of its own), each the raw bytes of its tensors in the training dtype
(bf16 stays bf16) behind a header of (magic, version, bucket index, fingerprint). The sender
fingerprints a bucket on the device where its tensors live; the receiver recomputes it on its
own device and refuses the whole update (the old weights stay) on any mismatch, a wrong
version or a bucket out of order (buckets.py). The carriers:

  collective    a torch.distributed group from learner rank 0 to every engine (gloo on CPU,
                NCCL on GPUs), built apart from the learners' own group, every operation
                bounded by rollout.weight_transfer_timeout_s (collective.py)
  object_store  learner rank 0 puts each bucket in Ray's object store once; each engine fetches
                it (object_store.py)
  ipc           colocated on GPUs: learner rank k hands the engine on its GPU CUDA IPC handles
                on its packed buckets (ipc.py)
"""
