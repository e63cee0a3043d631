"""The script the dashboard's server runs for every page (``app.py`` serves it): the frame, then the page.

It lives in ``ui/`` and not beside ``pages/`` on purpose: see ``app.py``.
"""

from ui import frame

frame.run()
