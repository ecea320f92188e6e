"""Launch code: tpu_pod.py runs T5X on every worker of a Cloud TPU VM (standard library only)."""
