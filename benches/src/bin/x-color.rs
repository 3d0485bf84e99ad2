//! `x-color`: a raw X11 client (x11rb, core protocol only, no Xlib) that
//! maps one window filled with a known colour. The X11 tests use it to check
//! that an X window's pixels reach the host compositor, that a close from the
//! host arrives as `WM_DELETE_WINDOW`, and that an override-redirect window (a
//! menu) shows beside its parent, and that the clipboard goes both ways.
//!
//! ```text
//! x-color [--color RRGGBB] [--title T] [--class C] [--size WxH]
//!         [--seconds S] [--menu RRGGBB] [--copy TEXT | --paste | --paste-unfocused]
//!         [--bench [--present | --fps N]] [--fullscreen-on-key]
//! ```
//! With `--bench` (the X11 benchmark) it redraws the whole window for S
//! seconds and prints `frames=N fps=F` (frames drawn): each frame filled
//! straight into the window and followed by a round trip to the X server (as
//! Xlib/cairo toolkits draw; Xwayland sends the compositor what is there each
//! time the last frame's callback is back); with `--present` each frame is
//! filled in a pixmap, shown with the Present extension and the next one drawn
//! once it is complete (as GL and Vulkan clients swap).
//! With `--fullscreen-on-key` its first key press asks the window manager for
//! fullscreen (`_NET_WM_STATE`, as EWMH says), and it prints `state=fullscreen`
//! once its `_NET_WM_STATE` says it is.
//! It prints `mapped` at its first Expose, `key=N` for each key press,
//! `deleted` when asked to close (then exits 0).
//! With `--copy TEXT` it owns `CLIPBOARD` once it has the focus and serves
//! TEXT (printing `copied`, then `served` for each request); with `--paste`
//! it asks for `CLIPBOARD` as `UTF8_STRING` once it has the focus and prints
//! `pasted=TEXT` (or `pasted-none`); `--paste-unfocused` asks 2 s after it
//! is mapped, focused or not.

use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use x11rb::connection::Connection;
use x11rb::protocol::xproto::{
    AtomEnum, ConfigureWindowAux, ConnectionExt as _, CreateGCAux, CreateWindowAux, EventMask,
    PropMode, Rectangle, WindowClass,
};
use x11rb::protocol::Event;
use x11rb::wrapper::ConnectionExt as _;

struct Args {
    color: u32,
    title: String,
    class: String,
    w: u16,
    h: u16,
    seconds: f64,
    menu: Option<u32>,
    copy: Option<String>,
    paste: bool,
    paste_unfocused: bool,
    bench: bool,
    present: bool,
    fps: Option<f64>,
    fullscreen_on_key: bool,
}

fn parse() -> Result<Args> {
    let mut a = Args {
        color: 0x00ff_8000,
        title: "x-color".into(),
        class: "x-color".into(),
        w: 640,
        h: 480,
        seconds: 30.0,
        menu: None,
        copy: None,
        paste: false,
        paste_unfocused: false,
        bench: false,
        present: false,
        fps: None,
        fullscreen_on_key: false,
    };
    let mut it = std::env::args().skip(1);
    while let Some(k) = it.next() {
        if [
            "--paste",
            "--paste-unfocused",
            "--bench",
            "--present",
            "--fullscreen-on-key",
        ]
        .contains(&k.as_str())
        {
            a.fullscreen_on_key |= k == "--fullscreen-on-key";
            a.paste |= k == "--paste";
            a.paste_unfocused |= k == "--paste-unfocused";
            a.bench |= k == "--bench";
            a.present |= k == "--present";
            continue;
        }
        let v = it.next().with_context(|| format!("{k} needs a value"))?;
        match k.as_str() {
            "--color" => a.color = u32::from_str_radix(&v, 16)?,
            "--menu" => a.menu = Some(u32::from_str_radix(&v, 16)?),
            "--title" => a.title = v,
            "--copy" => a.copy = Some(v),
            "--class" => a.class = v,
            "--seconds" => a.seconds = v.parse()?,
            "--fps" => a.fps = Some(v.parse()?),
            "--size" => {
                let (w, h) = v.split_once('x').context("--size WxH")?;
                (a.w, a.h) = (w.parse()?, h.parse()?);
            }
            _ => bail!("unknown option {k}"),
        }
    }
    Ok(a)
}

fn main() -> Result<()> {
    let a = parse()?;
    let (conn, screen) = x11rb::connect(None).context("connecting to $DISPLAY")?;
    let root = conn.setup().roots[screen].root;
    let protocols = conn.intern_atom(false, b"WM_PROTOCOLS")?.reply()?.atom;
    let delete = conn.intern_atom(false, b"WM_DELETE_WINDOW")?.reply()?.atom;
    let net_name = conn.intern_atom(false, b"_NET_WM_NAME")?.reply()?.atom;
    let utf8 = conn.intern_atom(false, b"UTF8_STRING")?.reply()?.atom;
    let win = conn.generate_id()?;
    conn.create_window(
        0,
        win,
        root,
        0,
        0,
        a.w,
        a.h,
        0,
        WindowClass::INPUT_OUTPUT,
        0,
        &CreateWindowAux::new().background_pixel(a.color).event_mask(
            EventMask::EXPOSURE
                | EventMask::KEY_PRESS
                | EventMask::STRUCTURE_NOTIFY
                | EventMask::FOCUS_CHANGE
                | EventMask::PROPERTY_CHANGE,
        ),
    )?;
    conn.change_property8(
        PropMode::REPLACE,
        win,
        AtomEnum::WM_NAME,
        AtomEnum::STRING,
        a.title.as_bytes(),
    )?;
    conn.change_property8(PropMode::REPLACE, win, net_name, utf8, a.title.as_bytes())?;
    let class = format!("{0}\0{0}\0", a.class);
    conn.change_property8(
        PropMode::REPLACE,
        win,
        AtomEnum::WM_CLASS,
        AtomEnum::STRING,
        class.as_bytes(),
    )?;
    conn.change_property32(PropMode::REPLACE, win, protocols, AtomEnum::ATOM, &[delete])?;
    let gc = conn.generate_id()?;
    conn.create_gc(gc, win, &CreateGCAux::new().foreground(a.color))?;
    conn.map_window(win)?;
    conn.flush()?;
    let end = Instant::now() + Duration::from_secs_f64(a.seconds);
    let (mut w, mut h) = (a.w, a.h);
    let mut mapped = false;
    let mut focused = false;
    let (mut fullscreen_asked, mut fullscreen_shown) = (a.fullscreen_on_key, false);
    let clip = Clip::new(&conn)?;
    while Instant::now() < end {
        let Some(e) = conn.poll_for_event()? else {
            std::thread::sleep(Duration::from_millis(5));
            continue;
        };
        match e {
            Event::Expose(_) => {
                fill(&conn, win, gc, w, h)?;
                if !mapped {
                    mapped = true;
                    println!("mapped");
                    if a.bench && a.present {
                        return bench_present(&conn, win, (w, h), &a);
                    }
                    if a.bench {
                        return bench(&conn, win, gc, &a);
                    }
                    if let Some(c) = a.menu {
                        menu(&conn, root, win, c)?;
                    }
                    if a.paste_unfocused {
                        std::thread::sleep(Duration::from_secs(2));
                        conn.convert_selection(
                            win,
                            clip.clipboard,
                            clip.utf8,
                            clip.prop,
                            x11rb::CURRENT_TIME,
                        )?;
                        conn.flush()?;
                    }
                }
            }
            Event::ConfigureNotify(e) if e.window == win => (w, h) = (e.width, e.height),
            Event::KeyPress(k) => {
                println!("key={}", k.detail);
                if std::mem::take(&mut fullscreen_asked) {
                    ask_fullscreen(&conn, root, win)?;
                }
            }
            Event::PropertyNotify(p) if p.window == win && !fullscreen_shown => {
                fullscreen_shown = is_fullscreen(&conn, win)?;
                if fullscreen_shown {
                    println!("state=fullscreen");
                }
            }
            Event::FocusIn(_) if !focused => {
                focused = true;
                println!("focused");
                clip.focused(&conn, win, &a)?;
            }
            Event::SelectionRequest(r) => clip.serve(&conn, &r, &a)?,
            Event::SelectionNotify(n) => clip.pasted(&conn, win, &n)?,
            Event::ClientMessage(m) if m.type_ == protocols && m.data.as_data32()[0] == delete => {
                println!("deleted");
                return Ok(());
            }
            _ => {}
        }
    }
    Ok(())
}

/// `--bench`: full frames drawn into the window, each followed by a round
/// trip, for `a.seconds` (the window's size followed as it changes); prints
/// `frames=N fps=F`.
fn bench(conn: &impl Connection, win: u32, gc: u32, a: &Args) -> Result<()> {
    let (mut w, mut h) = (a.w, a.h);
    let start = Instant::now();
    let mut frames = 0u32;
    while start.elapsed() < Duration::from_secs_f64(a.seconds) {
        let color = a.color ^ (frames & 0xff);
        conn.change_gc(
            gc,
            &x11rb::protocol::xproto::ChangeGCAux::new().foreground(color),
        )?;
        fill(conn, win, gc, w, h)?;
        conn.get_input_focus()?.reply()?;
        if let Some(fps) = a.fps {
            let next = start + Duration::from_secs_f64(f64::from(frames + 1) / fps);
            std::thread::sleep(next.saturating_duration_since(Instant::now()));
        }
        while let Some(e) = conn.poll_for_event()? {
            match e {
                Event::ConfigureNotify(e) if e.window == win => (w, h) = (e.width, e.height),
                Event::ClientMessage(_) => {
                    println!("deleted");
                    return Ok(());
                }
                _ => {}
            }
        }
        frames += 1;
    }
    let secs = start.elapsed().as_secs_f64();
    println!("frames={frames} fps={:.1}", f64::from(frames) / secs);
    Ok(())
}

/// `--bench --present`: full frames through the Present extension, each
/// drawn once the last is complete, for `a.seconds`; prints `frames=N fps=F`.
fn bench_present(conn: &impl Connection, win: u32, (w, h): (u16, u16), a: &Args) -> Result<()> {
    use x11rb::protocol::present::{self, ConnectionExt as _};
    conn.present_query_version(1, 2)?
        .reply()
        .context("the X server has no Present extension")?;
    let depth = conn.setup().roots[0].root_depth;
    let pixmap = conn.generate_id()?;
    conn.create_pixmap(depth, pixmap, win, w, h)?;
    let gc = conn.generate_id()?;
    conn.create_gc(gc, pixmap, &CreateGCAux::new())?;
    let eid = conn.generate_id()?;
    conn.present_select_input(eid, win, present::EventMask::COMPLETE_NOTIFY)?;
    let start = Instant::now();
    let mut frames = 0u32;
    while start.elapsed() < Duration::from_secs_f64(a.seconds) {
        let color = a.color ^ (frames & 0xff);
        conn.change_gc(
            gc,
            &x11rb::protocol::xproto::ChangeGCAux::new().foreground(color),
        )?;
        fill(conn, pixmap, gc, w, h)?;
        // valid/update regions, offsets, crtc, wait/idle fences: none.
        conn.present_pixmap(
            win,
            pixmap,
            frames,
            0,
            0,
            0,
            0,
            0,
            0,
            0,
            present::Option::NONE.into(),
            0,
            0,
            0,
            &[],
        )?;
        conn.flush()?;
        loop {
            match conn.wait_for_event()? {
                Event::PresentCompleteNotify(c) if c.serial == frames => break,
                Event::ClientMessage(_) => {
                    println!("deleted");
                    return Ok(());
                }
                _ => {}
            }
        }
        frames += 1;
    }
    let secs = start.elapsed().as_secs_f64();
    println!("frames={frames} fps={:.1}", f64::from(frames) / secs);
    Ok(())
}

/// EWMH: `_NET_WM_STATE` add `_NET_WM_STATE_FULLSCREEN`, sent to the root.
fn ask_fullscreen(conn: &impl Connection, root: u32, win: u32) -> Result<()> {
    let state = conn.intern_atom(false, b"_NET_WM_STATE")?.reply()?.atom;
    let full = conn
        .intern_atom(false, b"_NET_WM_STATE_FULLSCREEN")?
        .reply()?
        .atom;
    let m = x11rb::protocol::xproto::ClientMessageEvent::new(32, win, state, [1, full, 0, 1, 0]);
    conn.send_event(
        false,
        root,
        EventMask::SUBSTRUCTURE_REDIRECT | EventMask::SUBSTRUCTURE_NOTIFY,
        m,
    )?;
    conn.flush()?;
    Ok(())
}

fn is_fullscreen(conn: &impl Connection, win: u32) -> Result<bool> {
    let state = conn.intern_atom(false, b"_NET_WM_STATE")?.reply()?.atom;
    let full = conn
        .intern_atom(false, b"_NET_WM_STATE_FULLSCREEN")?
        .reply()?
        .atom;
    let r = conn
        .get_property(false, win, state, AtomEnum::ATOM, 0, 64)?
        .reply()?;
    Ok(r.value32().is_some_and(|mut v| v.any(|a| a == full)))
}

/// The clipboard modes' atoms.
struct Clip {
    clipboard: u32,
    targets: u32,
    utf8: u32,
    prop: u32,
}

impl Clip {
    fn new(conn: &impl Connection) -> Result<Self> {
        let atom = |n: &[u8]| -> Result<u32> { Ok(conn.intern_atom(false, n)?.reply()?.atom) };
        Ok(Clip {
            clipboard: atom(b"CLIPBOARD")?,
            targets: atom(b"TARGETS")?,
            utf8: atom(b"UTF8_STRING")?,
            prop: atom(b"X_COLOR_PASTE")?,
        })
    }

    fn focused(&self, conn: &impl Connection, win: u32, a: &Args) -> Result<()> {
        if a.copy.is_some() {
            conn.set_selection_owner(win, self.clipboard, x11rb::CURRENT_TIME)?;
            println!("copied");
        }
        if a.paste {
            conn.convert_selection(
                win,
                self.clipboard,
                self.utf8,
                self.prop,
                x11rb::CURRENT_TIME,
            )?;
        }
        conn.flush()?;
        Ok(())
    }

    fn serve(
        &self,
        conn: &impl Connection,
        r: &x11rb::protocol::xproto::SelectionRequestEvent,
        a: &Args,
    ) -> Result<()> {
        let mut property = r.property;
        match (&a.copy, r.target) {
            (Some(_), t) if t == self.targets => {
                conn.change_property32(
                    PropMode::REPLACE,
                    r.requestor,
                    r.property,
                    AtomEnum::ATOM,
                    &[self.targets, self.utf8],
                )?;
            }
            (Some(text), t) if t == self.utf8 => {
                conn.change_property8(
                    PropMode::REPLACE,
                    r.requestor,
                    r.property,
                    self.utf8,
                    text.as_bytes(),
                )?;
                println!("served");
            }
            _ => property = 0,
        }
        let e = x11rb::protocol::xproto::SelectionNotifyEvent {
            response_type: x11rb::protocol::xproto::SELECTION_NOTIFY_EVENT,
            sequence: 0,
            time: r.time,
            requestor: r.requestor,
            selection: r.selection,
            target: r.target,
            property,
        };
        conn.send_event(false, r.requestor, EventMask::NO_EVENT, e)?;
        conn.flush()?;
        Ok(())
    }

    fn pasted(
        &self,
        conn: &impl Connection,
        win: u32,
        n: &x11rb::protocol::xproto::SelectionNotifyEvent,
    ) -> Result<()> {
        if n.property == 0 {
            println!("pasted-none");
            return Ok(());
        }
        let r = conn
            .get_property(true, win, self.prop, AtomEnum::ANY, 0, 1 << 20)?
            .reply()?;
        println!("pasted={}", String::from_utf8_lossy(&r.value));
        Ok(())
    }
}

fn fill(conn: &impl Connection, win: u32, gc: u32, w: u16, h: u16) -> Result<()> {
    conn.poly_fill_rectangle(
        win,
        gc,
        &[Rectangle {
            x: 0,
            y: 0,
            width: w,
            height: h,
        }],
    )?;
    conn.flush()?;
    Ok(())
}

/// An override-redirect window (a menu) 40 px right of and 60 px below the
/// window's top-left corner, 160×120, in colour `c`; prints `menu=X,Y` (its
/// offset from the parent).
fn menu(conn: &impl Connection, root: u32, parent: u32, c: u32) -> Result<()> {
    let at = conn.translate_coordinates(parent, root, 0, 0)?.reply()?;
    let m = conn.generate_id()?;
    conn.create_window(
        0,
        m,
        root,
        at.dst_x + 40,
        at.dst_y + 60,
        160,
        120,
        0,
        WindowClass::INPUT_OUTPUT,
        0,
        &CreateWindowAux::new()
            .background_pixel(c)
            .override_redirect(1),
    )?;
    conn.map_window(m)?;
    conn.configure_window(
        m,
        &ConfigureWindowAux::new().stack_mode(x11rb::protocol::xproto::StackMode::ABOVE),
    )?;
    conn.flush()?;
    println!("menu=40,60");
    Ok(())
}
