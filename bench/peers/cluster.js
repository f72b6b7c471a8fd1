// Node.js cluster peer: the primary accepts and hands each connection to a worker
// (SCHED_RR, Node's default on Linux), serving the same answers as sockpool's handlers.
//   systemd-socket-activate -l 127.0.0.1:7101 node bench/peers/cluster.js echo|mixed|http WORKERS
// echo: echo until EOF. mixed: echo, after 50 ms when the payload starts with "S".
// http: HTTP/1.1 200 "hello\n" to every request, keep-alive unless the client closes.
'use strict';
const cluster = require('node:cluster');
const net = require('node:net');
const http = require('node:http');

const mode = process.argv[2] || 'echo';
const workers = parseInt(process.argv[3] || '4', 10);
// Socket-activated: the listening socket is fd 3 (LISTEN_FDS); the primary owns it.
const listenOn = process.env.LISTEN_FDS ? { fd: 3, backlog: 4096 } : { port: 7101, host: '127.0.0.1' };

cluster.schedulingPolicy = cluster.SCHED_RR;

if (cluster.isPrimary) {
  for (let i = 0; i < workers; i++) cluster.fork();
  const stop = () => {
    for (const id in cluster.workers) cluster.workers[id].process.kill('SIGTERM');
    process.exit(0);
  };
  process.on('SIGTERM', stop);
  process.on('SIGINT', stop);
} else if (mode === 'http') {
  const body = 'hello\n';
  http.createServer((req, res) => {
    res.writeHead(200, { 'Content-Type': 'text/plain', 'Content-Length': body.length });
    res.end(body);
  }).listen(listenOn);
} else {
  net.createServer({ allowHalfOpen: true }, (sock) => {
    sock.on('error', () => sock.destroy());
    if (mode === 'echo') {
      sock.on('data', (d) => sock.write(d));
      sock.on('end', () => sock.end());
      return;
    }
    const chunks = [];
    sock.on('data', (d) => chunks.push(d));
    sock.on('end', () => {
      const all = Buffer.concat(chunks);
      const reply = () => sock.end(all);
      if (all.length && all[0] === 0x53) setTimeout(reply, 50); else reply();
    });
  }).listen(listenOn);
}
