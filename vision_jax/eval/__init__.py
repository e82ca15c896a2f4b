"""Evaluation shared by every representation: the probes (`vision_jax.eval.probes`), and the
numbers behind the pictures, the confusion matrix and 2-D projections (`vision_jax.eval.analysis`)."""
