"""Images in: finding a category's images (MVTec layout or a plain folder), decoding them, the built-in demo
data, masks drawn by a person. Imports only the foundation (``core.portable``, ``core.types``, ``core.files``)."""
