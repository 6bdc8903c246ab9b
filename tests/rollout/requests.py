"""Generation requests on the tiny models' character tokenizer, as the controller renders them."""

from functools import lru_cache

from rollout.types import GenerationRequest


@lru_cache(maxsize=1)
def _tokenizer():
    from trainer.bootstrap import build_tokenizer

    return build_tokenizer()  # the tokenizer every tiny test model is saved with


def request(group_id: int, prompt: str, answer: str, num_samples: int) -> GenerationRequest:
    """Plain text (no chat template) with the tokenizer's specials, as the controller renders it."""
    return GenerationRequest(group_id=group_id, prompt_id=group_id, prompt=prompt, answer=answer,
                             num_samples=num_samples, prompt_ids=tuple(_tokenizer()(prompt)["input_ids"]))
