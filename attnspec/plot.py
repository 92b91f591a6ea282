"""The old home of `attnspec show`'s figures, kept so that `from attnspec.plot import ...`
still works: they live in `attnspec.show.plot` (also re-exported by `attnspec.show`)."""

from attnspec.show.plot import INSTALL_HINT, plot_mask, plot_weights, save

__all__ = ["plot_mask", "plot_weights", "save", "INSTALL_HINT"]
