//! Links `aop` with packed relative relocations (`-z pack-relative-relocs`, `DT_RELR`) when it
//! is built for the machine it is built on and that machine's C library can load them (glibc
//! 2.36 or later). A position-independent Rust binary carries one 24-byte relocation for every
//! pointer in its read-only data, about 95,000 in `aop`: 2.2 MiB that the dynamic loader reads,
//! and keeps resident, at every start. Packed, they take a few KiB.
//!
//! Anything else (a cross build, musl, an older glibc, `AOP_LINK_RELR=0`) links as before: a
//! binary with `DT_RELR` does not start on a glibc without it, so it is used only where the
//! build proves the library has it.

use std::process::Command;

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-env-changed=AOP_LINK_RELR");
    if std::env::var("AOP_LINK_RELR").is_ok_and(|v| v == "0") {
        return;
    }
    let target = std::env::var("TARGET").unwrap_or_default();
    let host = std::env::var("HOST").unwrap_or_default();
    if target != host || !target.ends_with("-linux-gnu") {
        return;
    }
    if glibc_version().is_some_and(|v| v >= (2, 36)) {
        println!("cargo:rustc-link-arg-bins=-Wl,-z,pack-relative-relocs");
    }
}

/// The build machine's glibc version, from `getconf GNU_LIBC_VERSION` ("glibc 2.36").
fn glibc_version() -> Option<(u32, u32)> {
    let out = Command::new("getconf")
        .arg("GNU_LIBC_VERSION")
        .output()
        .ok()?;
    let text = String::from_utf8(out.stdout).ok()?;
    let version = text.trim().strip_prefix("glibc ")?;
    let mut parts = version.split('.');
    let major = parts.next()?.parse().ok()?;
    let minor = parts
        .next()?
        .trim_end_matches(|c: char| !c.is_ascii_digit());
    Some((major, minor.parse().ok()?))
}
