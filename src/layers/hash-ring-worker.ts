/** Worker-thread entry of hashRingInWorker (hash-ring.ts): hashes one ring's stream, answers its digest, and ends. */
import { parentPort, workerData } from 'node:worker_threads';
import { drainRing, type Ring } from './hash-ring.js';

parentPort?.postMessage(drainRing(workerData as Ring));
