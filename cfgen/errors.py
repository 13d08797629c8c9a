"""The one exception type cfgen raises for bad input.

Every stage reports a user's mistake as a ``CfgenError`` whose message is a single line naming
the problem and the valid choices; the command line turns it into ``error: ...`` and exit code 2.
"""


class CfgenError(ValueError):
    """Bad input or state that the user can fix; the message is one line."""
