//! The `desktop` fuzz target's seeds are what the encoder makes today (a
//! guest stream with every request kind, a host stream with every answer and
//! event), and the seeds and corpus replay through the target's entry point.
//! `DESKTOP_SEEDS=write cargo test -p desktop-broker` rewrites the seeds.

use std::path::{Path, PathBuf};

use sommelier_guest::desktop::{Event, FromHost, Reply, Request, Urgency};

fn dir(kind: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../fuzz")
        .join(kind)
        .join("desktop")
}

fn seeds() -> Vec<(&'static str, Vec<u8>)> {
    let reqs = [
        Request::Notify {
            app: "mail".into(),
            summary: "<b>New</b> mail &amp; more".into(),
            body: "from \u{202e}someone\nhttps://example.org".into(),
            urgency: Urgency::Critical,
            timeout_ms: 5000,
            replaces: 0,
        },
        Request::CloseNotification(1),
        Request::OpenUri("https://example.org/a?b=c".into()),
        Request::OpenUri("file:///etc/passwd".into()),
        Request::OpenFile {
            title: "Open".into(),
            multiple: true,
            directory: false,
        },
        Request::SaveFile {
            title: "Save".into(),
            name: "report.odt".into(),
        },
        Request::ReadSetting("org.freedesktop.appearance".into(), "color-scheme".into()),
    ];
    let mut guest = vec![0u8];
    for (i, r) in reqs.iter().enumerate() {
        guest.extend(r.encode(i as u32).unwrap());
    }
    let answers = [
        FromHost::Reply(0, Reply::Done(7)),
        FromHost::Reply(4, Reply::Paths(vec!["/run/vmapp/doc/1/a.txt".into()])),
        FromHost::Reply(5, Reply::Cancelled),
        FromHost::Reply(6, Reply::Setting(1)),
        FromHost::Reply(3, Reply::Denied),
        FromHost::Reply(2, Reply::Failed),
        FromHost::Event(Event::NotificationClosed(7, 2)),
        FromHost::Event(Event::ActionInvoked(7, "default".into())),
    ];
    let mut host = vec![1u8];
    for a in &answers {
        host.extend(a.encode().unwrap());
    }
    vec![("requests", guest), ("answers", host)]
}

#[test]
fn desktop_seeds_are_current() {
    let d = dir("seeds");
    for (name, bytes) in seeds() {
        let p = d.join(name);
        if std::env::var("DESKTOP_SEEDS").as_deref() == Ok("write") {
            std::fs::create_dir_all(&d).unwrap();
            std::fs::write(&p, &bytes).unwrap();
        }
        let on_disk = std::fs::read(&p).unwrap_or_default();
        assert!(
            on_disk == bytes,
            "{} is not what the encoder makes: DESKTOP_SEEDS=write cargo test -p desktop-broker",
            p.display()
        );
    }
}

#[test]
fn desktop_corpus_replays() {
    let mut n = 0;
    for kind in ["corpus", "seeds"] {
        let Ok(rd) = std::fs::read_dir(dir(kind)) else {
            assert_eq!(kind, "corpus", "the seeds are missing");
            continue;
        };
        for e in rd {
            let p = e.unwrap().path();
            let taken = desktop_broker::fuzz::frames(&std::fs::read(&p).unwrap());
            if p.ends_with("seeds/desktop/requests") {
                assert_eq!(taken, 7, "every request of the seed parses");
            }
            n += 1;
        }
    }
    assert!(n >= 2);
}
