use clap::{Parser, Subcommand};

/// mimalloc: glibc's allocator spent ~13% of weir's CPU under load (arena locks,
/// consolidation) in the load benchmark's profile.
#[cfg(feature = "mimalloc")]
#[global_allocator]
static GLOBAL: allocator::Mimalloc = allocator::Mimalloc;

#[cfg(feature = "mimalloc")]
mod allocator;
use std::path::PathBuf;

/// Runs before any constructor that allocates (the allocator maps its first arena on
/// the first allocation), so even that arena gets no huge pages.
#[cfg(target_os = "linux")]
#[used]
#[unsafe(link_section = ".init_array")]
static NO_HUGE_PAGES: extern "C" fn() = {
    extern "C" fn no_huge_pages() {
        weir::server::disable_transparent_huge_pages();
    }
    no_huge_pages
};
use std::process::ExitCode;

#[derive(Parser)]
#[command(
    name = "weir",
    version,
    about = "OpenAI-compatible LLM gateway on Pingora"
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    /// Config file.
    #[arg(short, long, default_value = "conf/weir.yaml", global = true)]
    config: PathBuf,
}

#[derive(Subcommand)]
enum Command {
    /// Run the gateway (the default).
    Serve {
        /// Once listening, write `{"proxy": ADDR, "admin": ADDR, "pid": N}` here
        /// (the addresses really bound, e.g. the port the kernel chose for port 0).
        #[arg(long)]
        ready_file: Option<PathBuf>,
    },
    /// Validate a config file and print every problem found.
    Check,
    /// Manage API keys in the store named by the config (works while weir runs:
    /// the running gateway picks changes up within a second).
    Keys {
        #[command(subcommand)]
        action: weir::cli::KeysAction,
    },
    /// Import from another gateway's database into the store.
    Import {
        #[command(subcommand)]
        action: weir::cli::ImportAction,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command.unwrap_or(Command::Serve { ready_file: None }) {
        Command::Serve { ready_file } => match weir::server::serve(cli.config, ready_file) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("weir: {e}");
                ExitCode::from(2)
            }
        },
        Command::Check => match weir::server::load(&cli.config) {
            Ok((_, rt)) => {
                println!(
                    "{}: ok ({} channels, {} gateways)",
                    cli.config.display(),
                    rt.channels.len(),
                    rt.gateways.len()
                );
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("{e}");
                ExitCode::from(1)
            }
        },
        Command::Keys { action } => answer("keys", weir::cli::keys(&cli.config, action)),
        Command::Import { action } => answer("import", weir::cli::import_from(&cli.config, action)),
    }
}

/// Prints a command's JSON answer, or its error on stderr with exit code 1.
fn answer(command: &str, result: Result<String, String>) -> ExitCode {
    match result {
        Ok(out) => {
            println!("{out}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("weir {command}: {e}");
            ExitCode::from(1)
        }
    }
}
