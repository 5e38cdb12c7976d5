import { build, defineConfig, type Plugin } from "vite";

// The notebook widget's module (src/widget.ts → dist/assets/widget.js) is built on its own after the pages:
// anywidget hands the kernel's `_esm` text to the notebook as one module, so it cannot import a chunk
// shared with the pages; everything it needs is inlined.
function notebookWidget(): Plugin {
  return {
    name: "convlens-notebook-widget",
    apply: "build",
    async closeBundle() {
      await build({
        configFile: false,
        logLevel: "warn",
        build: {
          outDir: "dist",
          emptyOutDir: false,
          target: "es2022",
          modulePreload: false,
          rolldownOptions: {
            input: { widget: "src/widget.ts" },
            preserveEntrySignatures: "exports-only",
            output: { entryFileNames: "assets/[name].js" },
          },
        },
      });
    },
  };
}

// The Flask server serves dist/index.html at "/", dist/compare.html at "/compare.html" and the rest
// under "/assets/". The main entry keeps a stable name so another page can embed the elements with
// <script type="module" src="http://host:port/assets/convlens.js">.
export default defineConfig({
  base: "/",
  plugins: [notebookWidget()],
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
