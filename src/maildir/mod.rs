//! Maildir++ import and export (being written).
