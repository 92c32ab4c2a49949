"""scaling/plot_style.py: the house style's helpers on a bare matplotlib axis."""

import matplotlib

matplotlib.use('Agg')
import matplotlib.pyplot as plt  # noqa: E402 (after use('Agg'))
import numpy as np  # noqa: E402

from scaling import plot_style as style  # noqa: E402


def test_log_axis_has_one_label_per_tick_and_units():
  fig, ax = plt.subplots()
  ax.plot([8e3, 6.4e4], [3.0, 2.6])
  style.style_axis(ax, 'params', 'loss (nats/byte)', 'title', xlog=True)
  fig.canvas.draw()
  assert ax.get_xscale() == 'log' and ax.get_ylabel() == 'loss (nats/byte)'
  labels = [t.get_text() for t in ax.get_xticklabels(minor=True)]
  assert not any(labels)  # minor ticks carry no label: never two labels on a log axis.
  major = [t.get_text() for t in ax.get_xticklabels() if t.get_text()]
  assert 2 <= len(major) <= 7
  assert style._sci(2e4) == '$2{\\times}10^{4}$' and style._sci(500) == '500'
  plt.close(fig)


def test_extrapolated_fit_line_held_out_and_ordered_legend():
  fig, ax = plt.subplots()
  x = np.geomspace(1, 100, 20)
  style.fit_line(ax, x, 1 / x, 10, label='law', color='k')
  style.shade_extrapolated(ax, 10, 100)
  style.fitted_and_held_out(ax, [1, 2], [1, 2], [3], [3], yerr=[[0.1], [0.2]])
  ax.plot([1], [1], label='law')  # a duplicate label appears once.
  styles = [line.get_linestyle() for line in ax.get_lines()[:2]]
  assert styles == ['-', '--']  # solid over the data, dashed beyond it.
  leg = style.ordered_legend(ax, labels=['held out'])
  names = [t.get_text() for t in leg.get_texts()]
  assert names[0] == 'held out' and names.count('law') == 1
  assert style.EXTRAPOLATED in names and 'fitted' in names
  by_value = style.ordered_legend(ax, 'value', key=len)
  assert [t.get_text() for t in by_value.get_texts()][0] == 'law'
  plt.close(fig)
