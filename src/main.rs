use clap::{Parser, Subcommand};

/// mimalloc: glibc's allocator spent ~13% of weir's CPU under load (arena locks,
/// consolidation) in the load benchmark's profile.
#[cfg(feature = "mimalloc")]
#[global_allocator]
static GLOBAL: alloc::Mimalloc = alloc::Mimalloc;

#[cfg(feature = "mimalloc")]
mod alloc {
    use libmimalloc_sys as mi;
    use std::alloc::{GlobalAlloc, Layout};
    use std::ffi::c_void;

    /// Every mimalloc block of at least 16 bytes is 16-byte aligned. Its `_aligned`
    /// calls (which the `mimalloc` crate makes for every allocation) fall back to
    /// over-allocating whenever a size class is not a power of two: ~16 times per
    /// request in the load benchmark, and ~5% of weir's instructions in the allocator.
    const MIN_ALIGN: usize = 16;

    fn plain(l: &Layout) -> bool {
        l.align() <= MIN_ALIGN && l.align() <= l.size()
    }

    pub struct Mimalloc;

    // SAFETY: each call forwards to mimalloc, which returns memory of at least the
    // requested size and alignment (plain calls only where its blocks guarantee the
    // alignment), or null on failure; `dealloc` and `realloc` receive pointers it made.
    unsafe impl GlobalAlloc for Mimalloc {
        unsafe fn alloc(&self, l: Layout) -> *mut u8 {
            unsafe {
                if plain(&l) {
                    mi::mi_malloc(l.size()) as *mut u8
                } else {
                    mi::mi_malloc_aligned(l.size(), l.align()) as *mut u8
                }
            }
        }

        unsafe fn alloc_zeroed(&self, l: Layout) -> *mut u8 {
            unsafe {
                if plain(&l) {
                    mi::mi_zalloc(l.size()) as *mut u8
                } else {
                    mi::mi_zalloc_aligned(l.size(), l.align()) as *mut u8
                }
            }
        }

        unsafe fn dealloc(&self, p: *mut u8, _l: Layout) {
            unsafe { mi::mi_free(p as *mut c_void) }
        }

        unsafe fn realloc(&self, p: *mut u8, l: Layout, new_size: usize) -> *mut u8 {
            unsafe {
                if l.align() <= MIN_ALIGN && l.align() <= new_size {
                    mi::mi_realloc(p as *mut c_void, new_size) as *mut u8
                } else {
                    mi::mi_realloc_aligned(p as *mut c_void, new_size, l.align()) as *mut u8
                }
            }
        }
    }
}
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
    Serve,
    /// Validate a config file and print every problem found.
    Check,
    /// Manage API keys in the store named by the config (works while weir runs:
    /// the running gateway picks changes up within a second).
    Keys {
        #[command(subcommand)]
        action: weir::cli::KeysAction,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command.unwrap_or(Command::Serve) {
        Command::Serve => match weir::server::serve(cli.config) {
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
        Command::Keys { action } => match weir::cli::keys(&cli.config, action) {
            Ok(out) => {
                println!("{out}");
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("weir keys: {e}");
                ExitCode::from(1)
            }
        },
    }
}
