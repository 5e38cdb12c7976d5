import { defineConfig } from "vite";

// The Flask server serves dist/index.html at "/", dist/compare.html at "/compare.html" and the rest
// under "/assets/". The main entry keeps a stable name so another page can embed the elements with
// <script type="module" src="http://host:port/assets/convlens.js">.
export default defineConfig({
  base: "/",
  build: {
    outDir: "dist",
    assetsDir: "assets",
    emptyOutDir: true,
    target: "es2022",
    // One bundle and no chunks to preload: the polyfill would only be an extra request.
    modulePreload: { polyfill: false },
    rolldownOptions: {
      // The bundle itself is an entry, so both pages and any embedding page load the same convlens.js.
      input: {
        convlens: "src/main.ts",
        index: "index.html",
        compare: "compare.html",
        gallery: "gallery.html",
        api: "api.html",
      },
      // Keep convlens.js's exports (the element classes, parseNpy) for pages that import it.
      preserveEntrySignatures: "exports-only",
      output: {
        entryFileNames: "assets/[name].js",
        chunkFileNames: "assets/[name]-[hash].js",
        assetFileNames: "assets/[name]-[hash][extname]",
      },
    },
  },
  server: {
    proxy: {
      "/api": "http://127.0.0.1:5000",
      "/socket.io": { target: "http://127.0.0.1:5000", ws: true },
    },
  },
});
