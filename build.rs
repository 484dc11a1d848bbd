//! Build script: asks the linker to lay out the release binary's machine code in the order
//! `link/text-order.txt` gives, so that the code a server runs sits together.
//!
//! Why: the kernel maps a file's pages 64 KiB at a time around each page a process touches
//! (its fault-around), so the 660 KB of code a server runs at start, spread over 2.4 MB of
//! text, made nearly all of it resident: 2.1 MiB of a fresh server's 4.7 MiB of RSS.
//! Grouped, 0.7 MiB. HACKING.md, "The layout of the binary's code", says when and how to
//! write the file again (`make text-order`).

use std::env;

fn main() {
    println!("cargo::rerun-if-changed=link/text-order.txt");
    println!("cargo::rerun-if-env-changed=CHITCHAT_LINK_MAP");
    // The file names the symbols of a release build for this target, whose linker
    // (rust-lld, as for `--icf=all` in .cargo/config.toml) takes these flags.
    let release = env::var("PROFILE").is_ok_and(|profile| profile == "release");
    let target = env::var("TARGET").is_ok_and(|target| target == "x86_64-unknown-linux-gnu");
    if !(release && target) {
        return;
    }
    let root = env::var("CARGO_MANIFEST_DIR").unwrap_or_default();
    println!("cargo::rustc-link-arg-bins=-Wl,--symbol-ordering-file={root}/link/text-order.txt");
    // A name the build no longer has (a renamed function, a dependency updated) costs only
    // its place in the layout, so no warning for each.
    println!("cargo::rustc-link-arg-bins=-Wl,--no-warn-symbol-ordering");
    // The map link/text_order.py reads to turn addresses into names.
    if let Ok(map) = env::var("CHITCHAT_LINK_MAP") {
        println!("cargo::rustc-link-arg-bins=-Wl,-Map={map}");
    }
}
