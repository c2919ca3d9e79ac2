//! The TOML config: schema, validation with precise errors, and the diff a
//! reload applies.
//!
//! ```text
//! load(path)                 read + parse + validate, checking real interfaces
//! parse(text, name, env)     the same on a string, with injectable interfaces
//! diff(old, new)             what a SIGHUP reload has to change
//! ```
//!
//! Errors come all at once, in file order, one per line as
//! `file:line:col: key.path: reason`. Unknown keys, wrong types and bad enum
//! values are collected too, not only the first (see `parse.rs`); a TOML
//! syntax error alone stops the reading, since nothing after it can be
//! trusted.
//!
//! Key names follow keepalived where it has the concept; `configs/reference.toml`
//! lists every key with its default.

mod diff;
mod error;
mod model;
mod parse;
mod schema;
mod script_security;
mod validate;

#[cfg(test)]
mod tests;

use std::ffi::CString;
use std::path::Path;

pub use diff::{BackendChange, ConfigDiff, ServiceChange, diff};
pub use error::{ConfigError, ConfigErrors};
pub use model::*;

/// What validation needs to know about the machine; tests inject a fake.
pub trait Environment {
    fn interface_exists(&self, name: &str) -> bool;

    /// Why a configured script's program (argv[0]) must not be run, as
    /// `run_as` or else the daemon's user, if it must not (see
    /// `daemon.script_security`). Default: no objection.
    fn script_problem(&self, _program: &str, _run_as: Option<&ScriptUser>) -> Option<String> {
        None
    }

    /// The uid and primary gid of user `name`. Default: no such user.
    fn user_ids(&self, _name: &str) -> Option<(u32, u32)> {
        None
    }
}

/// Any `Fn(&str) -> bool` answers "does this interface exist?".
impl<F: Fn(&str) -> bool> Environment for F {
    fn interface_exists(&self, name: &str) -> bool {
        self(name)
    }
}

/// The running host, through `if_nametoindex(3)`.
#[derive(Clone, Copy, Debug, Default)]
pub struct System;

impl Environment for System {
    fn interface_exists(&self, name: &str) -> bool {
        let Ok(name) = CString::new(name) else {
            return false;
        };
        // SAFETY: `name` is a valid NUL-terminated string that outlives the call.
        unsafe { libc::if_nametoindex(name.as_ptr()) != 0 }
    }

    fn script_problem(&self, program: &str, run_as: Option<&ScriptUser>) -> Option<String> {
        let path = std::env::var_os("PATH");
        // SAFETY: geteuid has no preconditions.
        let euid = unsafe { libc::geteuid() };
        script_security::problem(program, path.as_deref(), euid, run_as)
    }

    fn user_ids(&self, name: &str) -> Option<(u32, u32)> {
        let name = CString::new(name).ok()?;
        let mut buf = vec![0u8; 16 * 1024];
        // SAFETY: an all-zero passwd is a valid value for getpwnam_r to fill.
        let mut pwd: libc::passwd = unsafe { std::mem::zeroed() };
        let mut found: *mut libc::passwd = std::ptr::null_mut();
        // SAFETY: every pointer is valid for the call and `buf` is as long
        // as the length passed; the result points into `pwd` or is null.
        let r = unsafe {
            libc::getpwnam_r(
                name.as_ptr(),
                &mut pwd,
                buf.as_mut_ptr().cast(),
                buf.len(),
                &mut found,
            )
        };
        (r == 0 && !found.is_null()).then_some((pwd.pw_uid, pwd.pw_gid))
    }
}

/// Reads, parses and validates the file at `path` against this host's
/// interfaces.
pub fn load(path: &Path) -> Result<Config, ConfigErrors> {
    let file = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|e| {
        ConfigErrors(vec![ConfigError {
            file: file.clone(),
            line: 1,
            col: 1,
            key: String::new(),
            reason: format!("cannot read the file: {e}"),
        }])
    })?;
    parse(&text, &file, &System)
}

/// Parses and validates `text`; `file_name` only labels the errors.
pub fn parse(text: &str, file_name: &str, env: &dyn Environment) -> Result<Config, ConfigErrors> {
    let loc = error::Locator::new(file_name, text);
    let mut errors = Vec::new();
    let parsed = parse::read(text, &loc, &mut errors);
    let config = parsed.map(|p| {
        let mut v = validate::Validator::new(&loc, env, &p.blanked);
        let config = v.config(&p.raw);
        errors.append(&mut v.errors);
        config
    });
    match config {
        Some(config) if errors.is_empty() => Ok(config),
        _ => {
            errors.sort_by_key(|e| (e.line, e.col));
            Err(ConfigErrors(errors))
        }
    }
}
