// The bundle's entry: defines the elements. A page that loads it can use
// <convlens-app> or, on its own, <convlens-job-view job="…" server="…">.

import { ConvlensApp } from "./app";
import { ConvlensJobView } from "./job-view";

export { ConvlensApp, ConvlensJobView };

// The job view first: the app creates one in its constructor.
if (!customElements.get("convlens-job-view")) customElements.define("convlens-job-view", ConvlensJobView);
if (!customElements.get("convlens-app")) customElements.define("convlens-app", ConvlensApp);
