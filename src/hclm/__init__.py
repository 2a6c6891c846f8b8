"""hclm: measure and control the information force of entropy regularizers in representation learning."""

from hclm.surrogates import Surrogate, available_surrogates, get_surrogate

__version__ = "0.1.0"

__all__ = ["Surrogate", "__version__", "available_surrogates", "get_surrogate"]
