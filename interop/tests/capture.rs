//! The capture recorder still records what is committed: every scenario through real Postfix and
//! Sendmail with the reference milter, into a fresh folder, gives the same files and, packet by
//! packet, the same command and response codes as `milterkit-proto/testdata/captures` (client
//! ports, queue ids and times differ between any two recordings).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};

use interop::{capture, require, Mta, RunDir, Tool};
use milterkit::proto::FrameDecoder;

fn codes(path: &Path) -> String {
    let mut buf = bytes::BytesMut::from(&std::fs::read(path).unwrap()[..]);
    let dec = FrameDecoder::new(usize::MAX >> 8);
    std::iter::from_fn(|| dec.decode(&mut buf).unwrap())
        .map(|f| f.code as char)
        .collect()
}

fn names(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

#[test]
fn recording_again_gives_the_committed_captures_packet_for_packet() {
    let mut tools = interop::tools_of(Mta::Postfix).to_vec();
    tools.extend(interop::tools_of(Mta::Sendmail));
    tools.push(Tool::Gcc);
    if !require(&tools) {
        return;
    }
    let committed =
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../milterkit-proto/testdata/captures");
    let dir = RunDir::new("capture-again").unwrap();
    let mut compared = 0;
    for (mta, variant) in [
        (Mta::Postfix, false),
        (Mta::Sendmail, false),
        (Mta::Postfix, true),
        (Mta::Sendmail, true),
    ] {
        capture::record(mta, variant, dir.path()).unwrap();
        let folder = format!(
            "{}{}",
            if mta == Mta::Postfix {
                "postfix"
            } else {
                "sendmail"
            },
            if variant { "-variant" } else { "" }
        );
        let (new, old) = (dir.join(&folder), committed.join(&folder));
        assert_eq!(names(&new), names(&old), "{folder}: files");
        for name in names(&old).iter().filter(|n| n.ends_with(".bin")) {
            assert_eq!(
                codes(&new.join(name)),
                codes(&old.join(name)),
                "{folder}/{name}: packet codes"
            );
            compared += 1;
        }
    }
    assert_eq!(compared, 112, "every stream compared");
}
