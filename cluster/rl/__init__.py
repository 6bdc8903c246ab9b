"""The RL loop, synchronous and asynchronous in one: read controller.py first."""
