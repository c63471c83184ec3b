//! `wstap ca init`, `path` and `spki`: create the local CA once and say
//! where its certificate is and how to pin it. Never prints the key.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Args, Subcommand};

use crate::tls::ca::{default_dir, CaFiles, LocalCa, Origin};

#[derive(Debug, Args)]
pub struct CaArgs {
    /// The CA directory [default: $XDG_DATA_HOME/wstap, else ~/.local/share/wstap]
    #[arg(long, value_name = "DIR", global = true)]
    pub dir: Option<PathBuf>,
    #[command(subcommand)]
    pub command: CaCommand,
}

#[derive(Debug, Subcommand)]
pub enum CaCommand {
    /// Create the local CA if there is none (the key file gets mode 0600).
    Init,
    /// Print the CA certificate's path.
    Path,
    /// Print the CA key's SPKI hash, for Chromium's
    /// --ignore-certificate-errors-spki-list (trust without the system store).
    Spki,
}

impl CaArgs {
    fn resolve(&self) -> anyhow::Result<PathBuf> {
        match &self.dir {
            Some(d) => Ok(d.clone()),
            None => default_dir().context("finding the CA directory"),
        }
    }
}

pub fn run(args: CaArgs) -> anyhow::Result<ExitCode> {
    let dir = args.resolve()?;
    match args.command {
        CaCommand::Init => init(&dir),
        CaCommand::Path => path(&dir),
        CaCommand::Spki => {
            println!("{}", LocalCa::load(&dir)?.spki_sha256());
            Ok(ExitCode::SUCCESS)
        }
    }
}

fn init(dir: &std::path::Path) -> anyhow::Result<ExitCode> {
    let (ca, origin) = LocalCa::load_or_create(dir)?;
    let cert = ca.cert_path().display();
    match origin {
        Origin::Created => println!("created the wstap CA: {cert}"),
        Origin::Loaded => println!("the wstap CA already exists (files left untouched): {cert}"),
    }
    println!(
        "trust it in your clients, e.g. `curl --cacert {cert}`; browsers, Node, Python: see README 'Trust the wstap CA'"
    );
    Ok(ExitCode::SUCCESS)
}

fn path(dir: &std::path::Path) -> anyhow::Result<ExitCode> {
    let files = CaFiles::in_dir(dir);
    files.check_complete()?;
    println!("{}", files.cert.display());
    Ok(ExitCode::SUCCESS)
}
