//! The teller program: interactive menus and scriptable subcommands (issue 6).
//!
//! Not built yet: this crate exists so the workspace layout of DESIGN.md holds from the start.
