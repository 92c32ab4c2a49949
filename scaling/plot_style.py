"""The house style every scaling/ plot shares (docs/plots.md lists the commands that redraw them).

- style_axis: axis labels with their units, log or linear scales with few, readable tick labels
  (one label per decade on a log axis, no minor-tick labels), a light grid.
- shade_extrapolated: an x-range shaded (hatched) as extrapolated, with its own legend entry.
- fit_line: a law drawn solid over the fitted data and dashed where it extrapolates.
- fitted_and_held_out: fitted points (grey circles) and held-out points (red diamonds) apart.
- ordered_legend: a legend without duplicate labels, in plotted order or sorted by a value.
"""

from collections.abc import Callable, Sequence

import numpy as np
from matplotlib import ticker

EXTRAPOLATED = 'extrapolated (beyond the fitted data)'
FITTED = {'marker': 'o', 'color': '0.55', 'ms': 4, 'ls': 'none'}
HELD_OUT = {'marker': 'D', 'color': 'C3', 'ms': 5, 'ls': 'none', 'mec': 'k', 'mew': 0.5}


def _sci(x: float, _=None) -> str:
  """A log tick's label: 10^k, or m×10^k for the 2s and 5s; plain from 0.001 to 10000."""
  if x <= 0:
    return ''
  if 0.001 <= x < 10000:
    return f'{x:g}'
  k = int(np.floor(np.log10(x) + 1e-9))
  m = round(x / 10**k, 6)
  return f'$10^{{{k}}}$' if m == 1 else f'${m:g}{{\\times}}10^{{{k}}}$'


def style_axis(
  ax,
  xlabel: str | None = None,
  ylabel: str | None = None,
  title: str | None = None,
  xlog: bool = False,
  ylog: bool = False,
  max_ticks: int = 6,
  rotate: float = 0,
) -> None:
  """Labels (with units), scales and few readable tick labels on both axes."""
  if xlabel is not None:
    ax.set_xlabel(xlabel)
  if ylabel is not None:
    ax.set_ylabel(ylabel)
  if title is not None:
    ax.set_title(title, fontsize=10)
  if xlog:
    ax.set_xscale('log')
  if ylog:
    ax.set_yscale('log')
  for axis, log, lim in ((ax.xaxis, xlog, ax.get_xlim()), (ax.yaxis, ylog, ax.get_ylim())):
    if log:
      lo, hi = (max(v, 1e-300) for v in lim)
      decades = np.log10(hi / lo)
      subs = (1.0, 2.0, 5.0) if decades <= 1.5 else (1.0, 3.0) if decades <= 2.2 else (1.0,)
      axis.set_major_locator(ticker.LogLocator(base=10, subs=subs, numticks=max_ticks + 1))
      axis.set_major_formatter(ticker.FuncFormatter(_sci))
      axis.set_minor_locator(ticker.LogLocator(base=10, subs=np.arange(2, 10), numticks=12))
      axis.set_minor_formatter(ticker.NullFormatter())  # major labels only: never two per tick.
    elif axis.get_scale() == 'linear':
      axis.set_major_locator(ticker.MaxNLocator(nbins=max_ticks))
  if rotate:
    ax.tick_params(axis='x', labelrotation=rotate)
    for label in ax.get_xticklabels():
      label.set_horizontalalignment('right')
  ax.grid(alpha=0.3, which='major')


def shade_extrapolated(ax, x0: float, x1: float, label: str = EXTRAPOLATED):
  """Shades [x0, x1] (light grey, hatched) behind the data; the patch carries `label` to the legend."""
  return ax.axvspan(
    x0, x1, facecolor='0.93', edgecolor='0.75', hatch='//', lw=0, zorder=0, label=label
  )


def fit_line(
  ax, x: np.ndarray, y: np.ndarray, x_max: float, label: str | None = None, **kw
) -> None:
  """A fitted law: solid where x <= x_max (the fitted data), dashed beyond (extrapolated)."""
  x, y = np.asarray(x, float), np.asarray(y, float)
  inside = x <= x_max
  kw.setdefault('lw', 1)
  ax.plot(x[inside], y[inside], '-', label=label, **kw)
  if (~inside).any():
    j = max(int(inside.sum()) - 1, 0)  # start the dashes where the solid part ends.
    ax.plot(x[j:], y[j:], ':' if kw.get('lw', 1) < 1 else '--', **kw)


def fitted_and_held_out(
  ax,
  x_fit,
  y_fit,
  x_held,
  y_held,
  yerr=None,
  fit_label: str = 'fitted',
  held_label: str = 'held out',
) -> None:
  """Fitted points as grey circles, held-out ones as red diamonds (with error bars when yerr is given)."""
  ax.plot(x_fit, y_fit, label=fit_label, **FITTED)
  if yerr is None:
    ax.plot(x_held, y_held, label=held_label, zorder=3, **HELD_OUT)
  else:
    ax.errorbar(
      x_held, y_held, yerr=yerr, label=held_label, zorder=3, elinewidth=1, capsize=2, **HELD_OUT
    )


def ordered_legend(
  ax,
  order: str = 'plotted',
  key: Callable[[str], float] | None = None,
  labels: Sequence[str] = (),
  where=None,
  **kw,
):
  """A legend with each label once: in plotted order, or sorted by key(label) (order='value');
  `labels` first, in that order, when given; drawn on `where` (e.g. the figure; default: ax).
  Returns the legend (None when nothing is labelled)."""
  handles, names = ax.get_legend_handles_labels()
  seen = {}
  for h, n in zip(handles, names):
    seen.setdefault(n, h)
  names = list(seen)
  if order == 'value' and key is not None:
    names.sort(key=key)
  names = [n for n in labels if n in seen] + [n for n in names if n not in labels]
  if not names:
    return None
  kw.setdefault('fontsize', 8)
  return (where or ax).legend([seen[n] for n in names], names, **kw)
