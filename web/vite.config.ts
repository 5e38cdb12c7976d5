import { defineConfig } from "vite";

// The Flask server serves dist/index.html at "/" and the rest under "/assets/".
// The entry keeps a stable name so another page can embed the elements with
// <script type="module" src="http://host:port/assets/convlens.js">.
export default defineConfig({
  base: "/",
  build: {
    outDir: "dist",
    assetsDir: "assets",
    emptyOutDir: true,
    target: "es2022",
    rolldownOptions: {
      output: {
        entryFileNames: "assets/convlens.js",
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
