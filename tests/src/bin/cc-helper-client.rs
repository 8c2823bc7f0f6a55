//! Test tool: sends one request to cc-privhelper and prints the response.
//!
//! `cc-helper-client SOCKET` reads the request body (JSON) from stdin,
//! frames it, sends it, and prints the response body (or nothing if the
//! helper closed without answering). `--raw` sends stdin bytes unframed, as
//! they are (for hostile-input tests).

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::process::ExitCode;

use cc_proto::frame::{FrameDecoder, MAX_FRAME_LEN, encode_frame};

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (raw, socket) = match args.as_slice() {
        [flag, s] if flag == "--raw" => (true, s.clone()),
        [s] => (false, s.clone()),
        _ => {
            eprintln!("usage: cc-helper-client [--raw] SOCKET < request");
            return ExitCode::from(2);
        }
    };
    let mut input = Vec::new();
    if std::io::stdin().read_to_end(&mut input).is_err() {
        return ExitCode::from(2);
    }
    let mut stream = match UnixStream::connect(&socket) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("connect: {e}");
            return ExitCode::from(3);
        }
    };
    let bytes = if raw {
        input
    } else {
        match encode_frame(&input, MAX_FRAME_LEN) {
            Ok(f) => f,
            Err(e) => {
                eprintln!("frame: {e}");
                return ExitCode::from(2);
            }
        }
    };
    let _ = stream.write_all(&bytes);
    let _ = stream.shutdown(std::net::Shutdown::Write);
    let mut dec = FrameDecoder::new(MAX_FRAME_LEN);
    let mut buf = [0u8; 65536];
    loop {
        let n = match stream.read(&mut buf) {
            Ok(0) | Err(_) => return ExitCode::from(4),
            Ok(n) => n,
        };
        let mut chunk = &buf[..n];
        while !chunk.is_empty() {
            match dec.feed(chunk) {
                Ok((used, Some(body))) => {
                    print!("{}", String::from_utf8_lossy(&body));
                    let _ = used;
                    return ExitCode::SUCCESS;
                }
                Ok((used, None)) => chunk = &chunk[used..],
                Err(e) => {
                    eprintln!("response: {e}");
                    return ExitCode::from(5);
                }
            }
        }
    }
}
