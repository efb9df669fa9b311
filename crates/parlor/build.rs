//! Release builds embed the web client: build the binary again when its files change, or
//! appear (a binary built before the client would otherwise keep serving none).
fn main() {
    println!("cargo:rerun-if-changed=../../web/dist");
}
