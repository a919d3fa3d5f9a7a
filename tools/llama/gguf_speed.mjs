// Time a GGUF file in llama.cpp (node-llama-cpp's prebuilt CPU binary): prefill and greedy decode.
//
//   node tools/llama/gguf_speed.mjs < request.json
//
// request: {"model": "model.gguf", "threads": 1, "prompt": [ids], "n_decode": 64, "repeats": 3}
// reply:   {"architecture", "load_s", "runs": [{"prefill_s", "prefill_tokens", "decode_s", "decode_tokens"}]}
//
// One context (runtime defaults: f16 KV cache, flash attention "auto"; batch = the prompt, so the
// prompt is one prefill batch). Each repeat clears the history, then evaluates the prompt and samples
// greedily: the prefill is the time to the first generated token (the whole prompt + one sampling),
// the decode the time of the next n_decode tokens (one batch-1 evaluation + one sampling each). A
// repeat that meets an end-of-generation token stops there and says how many tokens it decoded.
// A warm-up repeat runs first and is not reported. Peak memory is measured by the caller (wait4).
import {getLlama} from "node-llama-cpp";

const chunks = [];
for await (const chunk of process.stdin) chunks.push(chunk);
const request = JSON.parse(Buffer.concat(chunks).toString("utf8"));
const llama = await getLlama({gpu: false, build: "never", logLevel: "error"});
const t0 = performance.now();
const model = await llama.loadModel({modelPath: request.model, gpuLayers: 0});
const prompt = request.prompt;
const nDecode = request.n_decode;
const size = prompt.length + nDecode + 16;
const context = await model.createContext({contextSize: size, batchSize: size, sequences: 1,
    threads: request.threads ?? 1});
const loadSeconds = (performance.now() - t0) / 1000;
const sequence = context.getSequence();

async function once() {
    await sequence.clearHistory();
    const start = performance.now();
    let first = null;
    let decoded = 0;
    for await (const token of sequence.evaluate(prompt, {temperature: 0})) {
        void token;
        if (first === null) first = performance.now();
        else decoded += 1;
        if (decoded >= nDecode) break;
    }
    const end = performance.now();
    return {prefill_s: (first - start) / 1000, prefill_tokens: prompt.length,
        decode_s: (end - first) / 1000, decode_tokens: decoded};
}

await once();  // warm-up
const runs = [];
for (let i = 0; i < (request.repeats ?? 3); i++) runs.push(await once());
process.stdout.write(JSON.stringify({architecture: model.fileInfo.metadata?.general?.architecture ?? null,
    load_s: loadSeconds, runs}) + "\n");
await context.dispose();
await model.dispose();
await llama.dispose();
