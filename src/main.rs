//! The `wstap` binary: runs the CLI and maps its outcome to an exit code
//! (0 ok, 1 a check or diff found a problem, 2 usage or runtime error).

use std::process::ExitCode;

fn main() -> ExitCode {
    wstap::cli::main()
}
