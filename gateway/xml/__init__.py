"""The wire format: safe XML parsing, envelopes and receipts, batches, XML Signature."""
