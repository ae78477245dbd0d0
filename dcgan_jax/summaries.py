"""What a training call accumulates between two reads, and reading it.

A summary is {'d': D's metrics, 'g': G's, 'nonfinite': FirstNonFinite}: clu
averages of the losses and of D's outputs (``METRICS``, by ``config.loss``:
probabilities under BCE, scores under the hinge loss) over the iterations
that updated each net, and the first step whose losses were not finite. The
compiled step merges every iteration into it; the loop reads it only where it
logs, draws or saves (``host_scalars``, ``guards.check_finite``).
"""

import flax
from clu import metrics

from dcgan_jax import guards


# (No `from __future__ import annotations` here: clu reads these annotations.)
@flax.struct.dataclass
class DMetrics(metrics.Collection):
  loss_d: metrics.Average.from_output("loss_d")
  d_real: metrics.Average.from_output("d_real")  # mean D(x)
  d_fake: metrics.Average.from_output("d_fake")  # mean D(G(z)) in the D step


@flax.struct.dataclass
class GMetrics(metrics.Collection):
  loss_g: metrics.Average.from_output("loss_g")
  d_fake_g: metrics.Average.from_output("d_fake_g")  # mean D(G(z)) in the G step


@flax.struct.dataclass
class DScores(metrics.Collection):  # the hinge loss: D's outputs are scores
  loss_d: metrics.Average.from_output("loss_d")
  logit_real: metrics.Average.from_output("logit_real")
  logit_fake: metrics.Average.from_output("logit_fake")


@flax.struct.dataclass
class GScores(metrics.Collection):
  loss_g: metrics.Average.from_output("loss_g")
  logit_fake_g: metrics.Average.from_output("logit_fake_g")


METRICS = {"bce": (DMetrics, GMetrics), "hinge": (DScores, GScores)}  # by config.loss


def empty(loss: str = "bce") -> dict:
  """What a call accumulates between two reads: both nets' metrics, the first NaN."""
  d, g = METRICS[loss]
  return {"d": d.empty(), "g": g.empty(),
          "nonfinite": guards.FirstNonFinite.empty((*d.__annotations__, *g.__annotations__))}


def accumulate(summary, step, m, do_d, do_g):
  """``summary`` with iteration ``step``'s metrics ``m`` merged in."""
  values_d, values_g = m["d"].compute(), m["g"].compute()
  ran = {**dict.fromkeys(values_d, do_d), **dict.fromkeys(values_g, do_g)}
  return {"d": summary["d"].merge(m["d"]), "g": summary["g"].merge(m["g"]),
          "nonfinite": summary["nonfinite"].update(step, {**values_d, **values_g}, ran)}


def host_scalars(summary) -> dict[str, float]:
  """A host copy of a summary -> {name: mean} of the metrics that ran."""
  return {name: float(m.total) / int(m.count)
          for c in (summary["d"], summary["g"])
          for name, m in vars(c).items() if isinstance(m, metrics.Average) and int(m.count)}
