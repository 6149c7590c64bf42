//! `export --web`'s page in a real browser (headless Chromium): its mask equals `infer`'s, voxel
//! for voxel, and bad input gives a visible message. The page is served from a local server;
//! with `?volume=…&report=…` it posts the mask it would download (or the message it shows).
//!
//! Needs Chromium (`RELKD_CHROMIUM`, or `chromium` on the PATH; `bash ci/test.sh` installs
//! Debian's) and onnxruntime-web (`bash ci/setup-ort-web.sh`, which ci/test.sh runs).

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use burn::tensor::Device;
use relkd_core::nifti_io::{read_volume, write_volume};
use relkd_core::phantom::{CaseCount, Extras, Matrix, PhantomConfig, generate};
use relkd_core::transforms::Preprocessing;
use relkd_export::{Options, Probe, export, web};
use relkd_infer::model::Model;
use relkd_infer::runtime::Provider;
use relkd_models::{Architecture, NetworkConfig};
use relkd_runs::card::ModelCard;

fn chromium() -> Option<PathBuf> {
    if let Some(path) = std::env::var_os("RELKD_CHROMIUM") {
        return Some(path.into());
    }
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path).map(|dir| dir.join("chromium")).find(|p| p.is_file())
}

/// A static server for `root` on a free local port; POSTs to /report arrive on the channel as
/// (the X-Relkd header, the body).
fn serve(root: PathBuf) -> (u16, mpsc::Receiver<(String, Vec<u8>)>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let (reports, received) = mpsc::channel();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            let mut reader = BufReader::new(stream.try_clone().unwrap());
            let mut request = String::new();
            if reader.read_line(&mut request).is_err() {
                continue;
            }
            let (mut length, mut kind) = (0, String::new());
            loop {
                let mut line = String::new();
                if reader.read_line(&mut line).unwrap_or(0) == 0 || line.trim().is_empty() {
                    break;
                }
                let (name, value) = line.split_once(':').unwrap_or((&line, ""));
                match name.to_ascii_lowercase().as_str() {
                    "content-length" => length = value.trim().parse().unwrap_or(0),
                    "x-relkd" => kind = value.trim().to_string(),
                    _ => {}
                }
            }
            let mut parts = request.split_whitespace();
            let (method, target) = (parts.next().unwrap_or(""), parts.next().unwrap_or("/"));
            let path = target.split('?').next().unwrap_or("/").trim_start_matches('/');
            let (status, body, content_type) = if method == "POST" {
                let mut body = vec![0; length];
                reader.read_exact(&mut body).unwrap();
                let _ = reports.send((kind, body));
                ("200 OK", vec![], "text/plain")
            } else {
                let content_type = match path.rsplit('.').next() {
                    Some("html") => "text/html",
                    Some("js" | "mjs") => "text/javascript",
                    Some("wasm") => "application/wasm",
                    _ => "application/octet-stream",
                };
                match std::fs::read(root.join(path)) {
                    Ok(body) => ("200 OK", body, content_type),
                    Err(_) => ("404 Not Found", b"not found".to_vec(), "text/plain"),
                }
            };
            let head = format!(
                "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                body.len()
            );
            let _ = stream.write_all(head.as_bytes()).and_then(|()| stream.write_all(&body));
        }
    });
    (port, received)
}

/// Opens the page with `query` in headless Chromium and returns what it reports.
fn open_page(browser: &Path, site: &Path, query: &str) -> (String, Vec<u8>) {
    let (port, reports) = serve(site.to_path_buf());
    let profile = tempfile::tempdir().unwrap();
    let mut child = Command::new(browser)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
        ])
        .arg(format!("--user-data-dir={}", profile.path().display()))
        .arg(format!("http://127.0.0.1:{port}/index.html?{query}&report=/report"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("starting Chromium");
    let report = reports.recv_timeout(Duration::from_secs(120));
    let _ = child.kill();
    let _ = child.wait();
    report.expect("the page reported within 2 minutes")
}

/// The web folder of a small ESPNet with random weights (three context slices, input 32×32),
/// and a two-case phantom site beside it.
fn site(dir: &Path) -> PathBuf {
    let site = dir.join("site");
    std::fs::create_dir_all(&site).unwrap();
    let device = Device::flex();
    device.seed(5);
    let net = NetworkConfig::new(Architecture::Espnet).with_width(0.5).with_in_channels(3).init(&device);
    let card = ModelCard::untrained("student", Architecture::Espnet, &net, Preprocessing { size: 32, context: 1 });
    let probe = Probe::random([1, 3, 32, 32], &device);
    export(&net, &card, &site.join(web::MODEL_FILE), &Options::fp32(), &[probe], &device).unwrap();
    web::write_site(&site, &web::ort_web_dir().unwrap()).unwrap();
    generate(
        &PhantomConfig { sites: 1, cases: CaseCount::Each(1), size: Matrix::Pixels(40), seed: 4, eval_cases: 0 },
        &site.join("data"),
        &Extras::default(),
        &|_, _| {},
    )
    .unwrap();
    site
}

#[test]
fn the_page_segments_as_infer_does_and_shows_bad_input() {
    let Some(browser) = chromium() else {
        eprintln!("SKIPPED: no Chromium (set RELKD_CHROMIUM or install Debian's chromium; ci/test.sh does)");
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let site = site(dir.path());
    let case = site.join("data/RUNMC/Case00.nii.gz");
    // The phantom case as it is, and a non-square float32 crop of it (rows and columns must
    // not be swapped anywhere).
    let volume = read_volume(&case).unwrap();
    let [nx, ny, nz] = volume.dims;
    let (cx, cy) = (nx - 3, ny - 9);
    let crop: Vec<f32> = (0..nz)
        .flat_map(|z| (0..cy).flat_map(move |y| (0..cx).map(move |x| (x, y, z))))
        .map(|(x, y, z)| volume.data[x + nx * (y + ny * z)])
        .collect();
    write_volume(&site.join("data/crop.nii"), &crop, [cx, cy, nz], &volume.header).unwrap();

    let mut model = Model::open(&site.join(web::MODEL_FILE), Provider::Cpu, 1).unwrap();
    let prep = model.preprocessing(None, None).unwrap();
    for name in ["RUNMC/Case00.nii.gz", "crop.nii"] {
        let (kind, body) = open_page(&browser, &site, &format!("volume=data/{name}"));
        assert_eq!(kind, "mask", "{name}: {}", String::from_utf8_lossy(&body));
        let downloaded = dir.path().join("downloaded.nii.gz");
        std::fs::write(&downloaded, &body).unwrap();
        let from_page = read_volume(&downloaded).unwrap();
        let source = read_volume(&site.join("data").join(name)).unwrap();
        assert_eq!((from_page.dims, from_page.affine), (source.dims, source.affine), "{name}: the source grid");
        // infer's default batch (8): slices are independent, so the page's batch of one agrees.
        let expected = model.segment(&source, &prep, 8, false).unwrap().mask;
        let got: Vec<u8> = from_page.data.iter().map(|&v| v as u8).collect();
        let differ = got.iter().zip(&expected).filter(|(a, b)| a != b).count();
        assert_eq!(differ, 0, "{name}: {differ} of {} voxels differ from infer's mask", got.len());
        let foreground = got.iter().filter(|&&v| v == 1).count();
        assert!(foreground > 0 && foreground < got.len(), "{name}: a mask of one class ({foreground}) proves little");
    }

    // A truncated gzip: a visible message naming the file, not a blank page.
    let bytes = std::fs::read(&case).unwrap();
    std::fs::write(site.join("data/cut.nii.gz"), &bytes[..bytes.len() / 2]).unwrap();
    let (kind, body) = open_page(&browser, &site, "volume=data/cut.nii.gz");
    let message = String::from_utf8(body).unwrap();
    assert_eq!(kind, "error");
    assert!(message.contains("cut.nii.gz") && message.contains("gzip"), "{message}");
}
