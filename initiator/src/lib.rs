//! A small blocking iSCSI initiator for tests and load generation.
