//! `tillsync`: the operator CLI.

fn main() {
    println!("tillsync: operator CLI (subcommands are being built)");
}
