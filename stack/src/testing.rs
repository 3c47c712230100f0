//! In-memory host for scenario tests.
