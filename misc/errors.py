"""The project's one error for bad input."""


class DataError(RuntimeError):
    """Bad input (missing file, corrupt image, mismatched classes, ...). The message names the file and the fix.

    A DataError raised inside a DataLoader worker comes back re-created from a message holding the worker's whole
    traceback ("Caught DataError in DataLoader worker process 0. Original Traceback ..."); the constructor keeps
    only the original message, so the user still reads one line.
    """

    def __init__(self, message=""):
        message = str(message)
        if message.startswith("Caught DataError") and "DataError: " in message:
            message = message.rsplit("DataError: ", 1)[1].strip()
        super().__init__(message)
