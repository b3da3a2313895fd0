// The migrations are embedded at compile time (refinery's embed_migrations!),
// and cargo does not know a macro read that directory: without this, a new
// migration file would not reach an incremental build.
fn main() {
    println!("cargo:rerun-if-changed=migrations");
}
