"""A handler module that forks at import, and both copies go on importing (issue 11).

Only the process the dispatcher forked may be the worker; the copy must not take work or
speak on the worker's channel.
"""

import os

from sockpool.handlers import echo

os.fork()

handle = echo
