//! Builds the proxy's message tables from the protocol XML that the
//! wayland-rs crates ship (core, stable, staging, unstable, wlr, misc).
//!
//! The crates are build-dependencies only so that cargo downloads them; their
//! source folders are found from `Cargo.lock` in cargo's registry (or from
//! `WL_PROXY_XML_DIRS`, a `:`-separated list of folders, for vendored builds).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use quick_xml::events::Event;
use quick_xml::Reader;

const CRATES: &[&str] = &[
    "wayland-client",
    "wayland-protocols",
    "wayland-protocols-wlr",
    "wayland-protocols-misc",
];

#[derive(Default, Clone)]
struct Arg {
    kind: String,
    nullable: bool,
    interface: Option<String>,
}

#[derive(Default, Clone)]
struct Msg {
    name: String,
    since: u32,
    destructor: bool,
    args: Vec<Arg>,
}

#[derive(Default, Clone)]
struct Iface {
    name: String,
    version: u32,
    requests: Vec<Msg>,
    events: Vec<Msg>,
    file: String,
}

fn main() {
    let dirs = source_dirs();
    let mut files = Vec::new();
    for d in &dirs {
        collect_xml(d, &mut files);
    }
    files.sort();
    if files.len() < 50 {
        panic!(
            "wl-proxy build: found only {} protocol XML files in {dirs:?}",
            files.len()
        );
    }
    let mut ifaces: BTreeMap<String, Iface> = BTreeMap::new();
    for f in &files {
        for i in parse_file(f) {
            if let Some(old) = ifaces.get(&i.name) {
                panic!(
                    "interface {} defined in {} and {}",
                    i.name, old.file, i.file
                );
            }
            ifaces.insert(i.name.clone(), i);
        }
    }
    let index: BTreeMap<&str, usize> = ifaces
        .keys()
        .enumerate()
        .map(|(n, k)| (k.as_str(), n))
        .collect();
    let out = generate(&ifaces, &index);
    let path = PathBuf::from(std::env::var("OUT_DIR").unwrap()).join("protocols.rs");
    std::fs::write(path, out).unwrap();
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-changed=../Cargo.lock");
    println!("cargo:rerun-if-env-changed=WL_PROXY_XML_DIRS");
}

fn source_dirs() -> Vec<PathBuf> {
    if let Ok(v) = std::env::var("WL_PROXY_XML_DIRS") {
        return v.split(':').map(PathBuf::from).collect();
    }
    let manifest = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").unwrap());
    let lock = std::fs::read_to_string(manifest.join("../Cargo.lock")).expect("read Cargo.lock");
    let cargo_home = std::env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cargo")))
        .expect("CARGO_HOME or HOME");
    let registries: Vec<PathBuf> = std::fs::read_dir(cargo_home.join("registry/src"))
        .expect("cargo registry sources")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .collect();
    CRATES
        .iter()
        .map(|name| {
            let version = locked_version(&lock, name)
                .unwrap_or_else(|| panic!("{name} is not in Cargo.lock"));
            registries
                .iter()
                .map(|r| r.join(format!("{name}-{version}")))
                .find(|p| p.is_dir())
                .unwrap_or_else(|| {
                    panic!("sources of {name} {version} not found under {registries:?}")
                })
        })
        .collect()
}

fn locked_version(lock: &str, name: &str) -> Option<String> {
    let mut lines = lock.lines();
    while let Some(l) = lines.next() {
        if l == format!("name = \"{name}\"") {
            let v = lines.next()?;
            return Some(
                v.strip_prefix("version = \"")?
                    .strip_suffix('"')?
                    .to_string(),
            );
        }
    }
    None
}

fn collect_xml(dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return;
    };
    for e in rd.flatten() {
        let p = e.path();
        let name = p.file_name().unwrap().to_string_lossy().into_owned();
        if p.is_dir() {
            // Skip build output and the crates' own test fixtures.
            if !matches!(name.as_str(), "target" | "tests" | "examples" | "src") {
                collect_xml(&p, out);
            }
        } else if name.ends_with(".xml") {
            out.push(p);
        }
    }
}

fn attr(e: &quick_xml::events::BytesStart<'_>, key: &str) -> Option<String> {
    e.attributes()
        .flatten()
        .find(|a| a.key.as_ref() == key.as_bytes())
        .map(|a| String::from_utf8(a.value.into_owned()).unwrap())
}

fn parse_file(path: &Path) -> Vec<Iface> {
    let text = std::fs::read_to_string(path).unwrap();
    let mut r = Reader::from_str(&text);
    let mut out: Vec<Iface> = Vec::new();
    let mut cur: Option<Iface> = None;
    let mut msg: Option<(bool, Msg)> = None;
    loop {
        match r
            .read_event()
            .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        {
            Event::Eof => break,
            ev @ (Event::Start(_) | Event::Empty(_)) => {
                let empty = matches!(ev, Event::Empty(_));
                let (Event::Start(e) | Event::Empty(e)) = ev else {
                    unreachable!()
                };
                let tag = String::from_utf8(e.name().as_ref().to_vec()).unwrap();
                match tag.as_str() {
                    "interface" => {
                        cur = Some(Iface {
                            name: attr(&e, "name").unwrap(),
                            version: attr(&e, "version").unwrap().parse().unwrap(),
                            file: path.display().to_string(),
                            ..Default::default()
                        })
                    }
                    "request" | "event" => {
                        let m = Msg {
                            name: attr(&e, "name").unwrap(),
                            since: attr(&e, "since").map_or(1, |s| s.parse().unwrap()),
                            destructor: attr(&e, "type").as_deref() == Some("destructor"),
                            args: Vec::new(),
                        };
                        let is_req = tag == "request";
                        // Empty elements (`<request name="x"/>`) have no children.
                        if empty {
                            push_msg(cur.as_mut().unwrap(), is_req, m);
                        } else {
                            msg = Some((is_req, m));
                        }
                    }
                    "arg" => {
                        let a = Arg {
                            kind: attr(&e, "type").unwrap(),
                            nullable: attr(&e, "allow-null").as_deref() == Some("true"),
                            interface: attr(&e, "interface"),
                        };
                        msg.as_mut().unwrap().1.args.push(a);
                    }
                    _ => {}
                }
            }
            Event::End(e) => match e.name().as_ref() {
                b"request" | b"event" => {
                    let (is_req, m) = msg.take().unwrap();
                    push_msg(cur.as_mut().unwrap(), is_req, m);
                }
                b"interface" => out.push(cur.take().unwrap()),
                _ => {}
            },
            _ => {}
        }
    }
    out
}

fn push_msg(i: &mut Iface, is_req: bool, m: Msg) {
    if is_req {
        i.requests.push(m)
    } else {
        i.events.push(m)
    }
}

fn generate(ifaces: &BTreeMap<String, Iface>, index: &BTreeMap<&str, usize>) -> String {
    let mut s = String::new();
    writeln!(s, "/// Every interface the proxy knows, sorted by name.").unwrap();
    writeln!(
        s,
        "pub static INTERFACES: [Interface; {}] = [",
        ifaces.len()
    )
    .unwrap();
    for i in ifaces.values() {
        writeln!(
            s,
            "    Interface {{ name: {:?}, version: {}, requests: &[{}], events: &[{}] }},",
            i.name,
            i.version,
            msgs(&i.requests, index, &i.name),
            msgs(&i.events, index, &i.name)
        )
        .unwrap();
    }
    writeln!(s, "];").unwrap();
    s
}

fn msgs(ms: &[Msg], index: &BTreeMap<&str, usize>, owner: &str) -> String {
    let mut s = String::new();
    for m in ms {
        let fds = m.args.iter().filter(|a| a.kind == "fd").count();
        write!(
            s,
            "Message {{ name: {:?}, since: {}, destructor: {}, fds: {}, args: &[",
            m.name, m.since, m.destructor, fds
        )
        .unwrap();
        for a in &m.args {
            let kind = match a.kind.as_str() {
                "int" => "Int",
                "uint" => "Uint",
                "fixed" => "Fixed",
                "string" => "Str",
                "object" => "Object",
                "new_id" => "NewId",
                "array" => "Array",
                "fd" => "Fd",
                k => panic!("{owner}.{}: unknown arg type {k}", m.name),
            };
            let iface = match &a.interface {
                Some(n) => {
                    let i = index
                        .get(n.as_str())
                        .unwrap_or_else(|| panic!("{owner}.{}: unknown interface {n}", m.name));
                    format!("Some({i})")
                }
                None => "None".to_string(),
            };
            write!(
                s,
                "Arg {{ kind: ArgKind::{kind}, nullable: {}, interface: {iface} }}, ",
                a.nullable
            )
            .unwrap();
        }
        write!(s, "] }}, ").unwrap();
    }
    s
}
