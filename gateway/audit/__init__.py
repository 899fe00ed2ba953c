"""The tamper-evident exchange log: hash chain, checkpoints, evidence, verification, export."""
