"""Evaluation shared by every representation: the probes (`vision_jax.eval.probes`)."""
