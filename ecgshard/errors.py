"""The one exception family. The library raises these; the CLI turns them into messages."""


class ECGShardError(Exception):
    """Any problem ecgshard reports to the user (bad options, missing files, mismatches)."""


class BadRecordError(ECGShardError):
    """One record cannot be used. ``reason`` is a short stable key used for skip counts."""

    def __init__(self, reason, detail=""):
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail


class SchemaError(ECGShardError):
    """An artifact (shard, manifest, text matrix, checkpoint) does not match the contract."""
