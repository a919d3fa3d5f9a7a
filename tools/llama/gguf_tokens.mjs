// Run GGUF files in llama.cpp (node-llama-cpp's prebuilt CPU binary) on given token ids; print JSON.
//
//   node tools/llama/gguf_tokens.mjs < request.json
//
// request: {"threads": 1, "runs": [run, ...]}, each run:
//   {"model": "model.gguf", "precise": false,          true: f32 KV cache, no flash attention (the
//                                                      runtime's defaults are an f16 cache, flash "auto")
//    "greedy": [[prompt ids], ...], "n_tokens": 12,   greedy continuation (temperature 0, EOS included)
//    "forced": [[ids], ...], "from": [k, ...],         teacher-forced: after each prefix ids[:j], j >= k,
//                                                      the next-token distribution's top id, log p(top)
//                                                      and log p(ids[j]) (the forced token)
//    "texts": ["...", ...]}                            llama.cpp's tokenisation (no BOS; the text of a
//                                                      special token is that token, as in transformers)
// reply:   {"runs": [{"architecture", "vocabulary_type", "add_bos", "greedy": [[ids]],
//                     "forced": [[{"top", "top_logprob", "logprob"}]], "tokens": [[ids]]}]}
//
// Token ids go in and out as they are: no BOS is added, no chat template applied. Probabilities are
// llama.cpp's softmax over the whole vocabulary (temperature 1).
import {getLlama} from "node-llama-cpp";

async function greedyContinuations(sequence, prompts, nTokens) {
    const out = [];
    for (const prompt of prompts) {
        await sequence.clearHistory();
        const generated = [];
        if (nTokens > 0) {
            for await (const token of sequence.evaluate(prompt, {temperature: 0, yieldEogToken: true})) {
                generated.push(token);
                if (generated.length >= nTokens) break;
            }
        }
        out.push(generated);
    }
    return out;
}

async function forcedDistributions(sequence, sequences, from) {
    const out = [];
    for (const [n, ids] of sequences.entries()) {
        await sequence.clearHistory();
        const start = Math.max(1, from?.[n] ?? 1);
        // the distribution after ids[:j] comes with the evaluation of ids[j - 1]
        const input = ids.map((token, i) => (i + 1 >= start && i + 1 < ids.length)
            ? [token, {generateNext: {probabilities: true}}] : token);
        const results = await sequence.controlledEvaluate(input);
        const rows = [];
        for (let i = start - 1; i + 1 < ids.length; i++) {
            const probabilities = results[i]?.next?.probabilities;
            if (probabilities == null) throw new Error(`no probabilities after token ${i}`);
            const [top, topProbability] = probabilities.entries().next().value;  // sorted, highest first
            rows.push({top, top_logprob: Math.log(topProbability),
                logprob: Math.log(probabilities.get(ids[i + 1]) ?? 0)});
        }
        out.push(rows);
    }
    return out;
}

async function run(llama, spec, threads) {
    const model = await llama.loadModel({modelPath: spec.model, gpuLayers: 0});
    const nTokens = spec.n_tokens ?? 0;
    const longest = Math.max(16, ...(spec.greedy ?? []).map((p) => p.length + nTokens),
        ...(spec.forced ?? []).map((p) => p.length));
    // "precise": an f32 KV cache and no flash attention (whose f16 steps alone move log-probs by ~1e-3)
    const precise = spec.precise ? {flashAttention: false, experimentalKvCacheKeyType: "F32",
        experimentalKvCacheValueType: "F32"} : {};
    const context = await model.createContext({contextSize: longest + 16, batchSize: longest + 16, sequences: 1,
        threads, ...precise});
    try {
        const sequence = context.getSequence();
        return {
            architecture: model.fileInfo.metadata?.general?.architecture ?? null,
            vocabulary_type: model.vocabularyType,
            add_bos: model.tokens.shouldPrependBosToken,
            greedy: await greedyContinuations(sequence, spec.greedy ?? [], nTokens),
            forced: await forcedDistributions(sequence, spec.forced ?? [], spec.from),
            tokens: (spec.texts ?? []).map((text) => Array.from(model.tokenize(text, true))),
        };
    } finally {
        await context.dispose();
        await model.dispose();
    }
}

const chunks = [];
for await (const chunk of process.stdin) chunks.push(chunk);
const request = JSON.parse(Buffer.concat(chunks).toString("utf8"));
const DEFAULT_THREADS = 1;  // on a busy machine more threads spin at ggml's barriers (30x slower measured)
const llama = await getLlama({gpu: false, build: "never", logLevel: "error"});
const runs = [];
for (const spec of request.runs) runs.push(await run(llama, spec, request.threads ?? DEFAULT_THREADS));
process.stdout.write(JSON.stringify({runs}) + "\n");
await llama.dispose();
