//! The BPF object depends on the `bpf-linker` binary, which cargo cannot see as a
//! dependency: rebuild when the one on PATH changes.
fn main() {
    match which::which("bpf-linker") {
        Ok(path) => println!("cargo:rerun-if-changed={}", path.display()),
        Err(e) => {
            println!("cargo:warning=bpf-linker not found on PATH ({e}); run `cargo xtask setup`")
        }
    }
}
