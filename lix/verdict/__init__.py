"""The verdict of a profile (``lix sweep --profile``) from its ledger alone: ``figures`` (pure
statistics of the ledger's lines), ``markdown`` (README.md, verdict.json and the pictures). Apart
from lix.report, whose DVC stage reads run directories, not ledgers."""
