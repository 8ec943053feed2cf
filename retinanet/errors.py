"""The one base class of every error a user can fix.

A bad file (labels, DICOM, submission, weights), a bad config key or value, a run directory
that cannot be used or a place that cannot be written raises a subclass of `UserError` whose
message names the file, row or key. Every command turns it into `error: <message>` and exit
status 2 (`retinanet.commands.common.run_command`); anything else is a bug and keeps its traceback.
"""


class UserError(Exception):
    """An error the user can fix; its message names the file, row or config key."""
