//! `async-tftp-server ADDR DIR`: serves DIR read-only over TFTP on ADDR with the
//! `async-tftp` crate's defaults (it honours blksize, tsize, timeout and windowsize).
//! Prints `listening on ADDR` on stderr once bound. Used as a peer by Baton's
//! `boot_storm` benchmark.

use std::net::SocketAddr;
use std::process::ExitCode;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().collect();
    let (Some(addr), Some(dir)) = (args.get(1), args.get(2)) else {
        eprintln!("usage: async-tftp-server ADDR DIR");
        return ExitCode::from(2);
    };
    let addr: SocketAddr = match addr.parse() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("bad address {addr}: {e}");
            return ExitCode::from(2);
        }
    };
    let result = async_io::block_on(async {
        let server = async_tftp::server::TftpServerBuilder::with_dir_ro(dir)?
            .bind(addr)
            .build()
            .await?;
        eprintln!("listening on {}", server.listen_addr()?);
        server.serve().await
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("async-tftp-server: {e}");
            ExitCode::FAILURE
        }
    }
}
