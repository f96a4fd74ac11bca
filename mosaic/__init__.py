"""MOSAIC: scheduling Mixture-of-Agents LLM workloads on a few GPUs."""

__version__ = "0.1.0"
