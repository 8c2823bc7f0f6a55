//! Arbitrary bytes on the helper socket, fed in arbitrary chunk sizes: the
//! frame decoder never panics or over-reads, every body it yields is decoded
//! strictly, and a request that decodes re-encodes to an equal request.
#![no_main]

use cc_proto::frame::{FrameDecoder, encode_frame};
use cc_proto::helper::{HelperRequest, HelperResponse, decode_strict, encode};
use libfuzzer_sys::fuzz_target;

const MAX: usize = 64 * 1024;

fuzz_target!(|data: &[u8]| {
    let Some((&chunk, mut rest)) = data.split_first() else { return };
    let chunk = usize::from(chunk).max(1);
    let mut dec = FrameDecoder::new(MAX);
    while !rest.is_empty() {
        let want = dec.wanted();
        assert!(want >= 1 && want <= MAX);
        let take = chunk.min(rest.len());
        let (used, frame) = match dec.feed(&rest[..take]) {
            Ok(r) => r,
            Err(_) => return,
        };
        assert!(used <= take);
        rest = &rest[used..];
        if let Some(body) = frame {
            assert!(!body.is_empty() && body.len() <= MAX);
            if let Ok(req) = decode_strict::<HelperRequest>(&body) {
                let again = encode(&req).unwrap();
                assert_eq!(decode_strict::<HelperRequest>(&again).unwrap(), req);
                let framed = encode_frame(&again, usize::MAX).unwrap();
                assert_eq!(&framed[4..], &again[..]);
                match &req {
                    HelperRequest::Exec(e) => {
                        if let Ok(job) = e.job() {
                            let _ = job.validate();
                        }
                        let _ = cc_proto::helper::signed(e.signed.as_deref());
                    }
                    HelperRequest::WriteCron(w) => {
                        if let Ok(entries) = w.entries() {
                            for entry in entries {
                                let _ = entry.validate();
                            }
                        }
                        let _ = cc_proto::helper::signed(w.signed.as_deref());
                    }
                    HelperRequest::RunScheduled(r) => {
                        let _ = cc_proto::JobId::parse(&r.job_id);
                    }
                    HelperRequest::AckReports(a) => {
                        for id in &a.report_ids {
                            let _ = cc_proto::JobId::parse(id);
                        }
                    }
                    HelperRequest::Status | HelperRequest::TakeReports => {}
                }
            }
            let _ = decode_strict::<HelperResponse>(&body);
        } else if used == 0 {
            break;
        }
    }
});
