"""The GAN losses, and what D's outputs mean under each (``config.loss``).

* ``'bce'`` (the original's): D on BCE(D(x), 1) + BCE(D(G(z)), 0), G on the
  non-saturating BCE(D(G(z)), 1), with D's sigmoid applied inside the loss
  (numerically stable logits). Logged: D's mean probabilities D(x), D(G(z)).
* ``'hinge'`` (Lim & Ye 2017; Miyato et al. 2018, the SN-GAN and BigGAN
  loss): D on mean(relu(1 - D(x))) + mean(relu(1 + D(G(z)))), G on
  -mean(D(G(z))). D's outputs are unbounded scores, not probabilities, so
  what is logged is their means: logit_real, logit_fake (and logit_fake_g in
  the G step).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax

LOSSES = ("bce", "hinge")


def bce(logits, target: float):
  """Mean sigmoid cross-entropy: the original's Sigmoid + BCELoss, stably."""
  return optax.sigmoid_binary_cross_entropy(
      logits, jnp.full_like(logits, target)).mean()


def d_loss(loss: str, logit_real, logit_fake):
  """D's loss on its logits for a real and a generated batch."""
  if loss == "hinge":
    return jax.nn.relu(1.0 - logit_real).mean() + jax.nn.relu(1.0 + logit_fake).mean()
  return bce(logit_real, 1.0) + bce(logit_fake, 0.0)


def g_loss(loss: str, logit_fake):
  """G's loss on D's logits for a generated batch."""
  if loss == "hinge":
    return -logit_fake.mean()
  return bce(logit_fake, 1.0)


def d_outputs(loss: str, logit_real, logit_fake) -> dict:
  """What D's outputs mean, averaged: probabilities (bce) or raw scores (hinge)."""
  if loss == "hinge":
    return {"logit_real": logit_real.mean(), "logit_fake": logit_fake.mean()}
  return {"d_real": jax.nn.sigmoid(logit_real).mean(),
          "d_fake": jax.nn.sigmoid(logit_fake).mean()}


def g_outputs(loss: str, logit_fake) -> dict:
  if loss == "hinge":
    return {"logit_fake_g": logit_fake.mean()}
  return {"d_fake_g": jax.nn.sigmoid(logit_fake).mean()}
