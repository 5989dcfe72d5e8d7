// Starts tests/http/fake_http_server (path in argv) and resolves with its URL
// once it prints "listening on http://HOST:PORT"; stop() ends it.
import { spawn } from "node:child_process";

export function startServer(binary, args = []) {
  return new Promise((resolve, reject) => {
    const child = spawn(binary, ["--listen", "127.0.0.1:0", ...args], {
      stdio: ["ignore", "pipe", "inherit"],
    });
    let out = "";
    const timer = setTimeout(() => {
      child.kill("SIGKILL");
      reject(new Error("the server did not start within 20 s: " + out));
    }, 20000);
    child.on("error", (e) => { clearTimeout(timer); reject(e); });
    child.on("exit", (code) => { clearTimeout(timer); reject(new Error("the server exited with " + code + ": " + out)); });
    child.stdout.on("data", (data) => {
      out += data.toString();
      const m = out.match(/listening on (http:\/\/\S+)/);
      if (m) {
        clearTimeout(timer);
        child.removeAllListeners("exit");
        resolve({
          url: m[1],
          stop: () => new Promise((done) => { child.on("exit", done); child.kill("SIGTERM"); }),
        });
      }
    });
  });
}

export function serverBinary() {
  const binary = process.argv[2];
  if (!binary) {
    console.error("usage: node " + process.argv[1] + " PATH/TO/fake_http_server");
    process.exit(2);
  }
  return binary;
}
