// The bundle's entry: defines the elements. A page that loads it can use
// <convlens-app>, <convlens-compare> or, on its own, <convlens-job-view job="…" server="…">.

import { ConvlensApp } from "./app";
import { ConvlensCodeMap } from "./code-map";
import { ConvlensCompare } from "./compare";
import { ConvlensGallery } from "./gallery";
import { ConvlensJobView } from "./job-view";
import { NpyError, parseNpy } from "./npy";

// parseNpy also lets a host page read the .npy arrays of GET /api/jobs/<id>/arrays/<name>.npy.
export {
  ConvlensApp,
  ConvlensCodeMap,
  ConvlensCompare,
  ConvlensGallery,
  ConvlensJobView,
  NpyError,
  parseNpy,
};

// The code map and the job view first: the app creates a job view in its constructor, which makes maps.
if (!customElements.get("convlens-code-map")) customElements.define("convlens-code-map", ConvlensCodeMap);
if (!customElements.get("convlens-job-view")) customElements.define("convlens-job-view", ConvlensJobView);
if (!customElements.get("convlens-app")) customElements.define("convlens-app", ConvlensApp);
if (!customElements.get("convlens-compare")) customElements.define("convlens-compare", ConvlensCompare);
if (!customElements.get("convlens-gallery")) customElements.define("convlens-gallery", ConvlensGallery);
